"""What skipping non-finite steps on the device costs on CPU: fused AdamW with ``found_inf`` (now) against a host
check before a plain fused step (``_step_supports_amp_scaling`` off makes ``Agent._step`` take that path).

    python docs/experiments/found_inf_cost.py step            # one fused step of a toy critic's parameters
    python docs/experiments/found_inf_cost.py update ROUNDS PRESET   # whole updates alternated in one process
"""
import sys
import time

import torch

if sys.argv[1] == "step":
    torch.set_num_threads(2)
    shapes = [(128, 384), (128,), (128, 128), (128,), (1, 128), (1,)]  # small+toy critic, 2 layers of 128
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-4, eps=1e-5, weight_decay=1e-6, fused=True)
    found_inf = torch.zeros(())

    def plain():
        opt.step()

    def with_found_inf():
        opt.grad_scale, opt.found_inf = None, found_inf
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf

    for _ in range(3):
        line = []
        for name, step in (("plain", plain), ("found_inf", with_found_inf)):
            for _ in range(50):
                step()
            start = time.perf_counter()
            for _ in range(500):
                step()
            line.append(f"{name} {(time.perf_counter() - start) / 500 * 1e6:.0f} us")
        print(", ".join(line))
else:
    from xdreamer.bench import alternating_updates

    def use(flag):
        def switch(agent):
            if not agent.optimizers:
                agent.init_optimizers()
            for opt in agent.optimizers.values():
                opt._step_supports_amp_scaling = flag
        return switch

    alternating_updates({"host check": use(False), "found_inf": use(True)}, int(sys.argv[2]), sys.argv[3])
