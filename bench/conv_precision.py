"""How far the float32 meta-gradient of the Omniglot conv net is from float64, per math setting.

Diagnoses the CUDA defaults behind core.setup.Setup.math_mode: the relative error (whole-gradient
norm) of a second-order meta-gradient in float32 against float64 on the same device, for our
default (TF32 off, deterministic cuDNN), TF32 on, nondeterministic cuDNN, and cuDNN off (PyTorch's
native convolutions); the three parameters with the largest absolute error are listed.

    python bench/conv_precision.py [--device cuda] [--variants maml,mt-net] [--meta-batch 8]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from metasweep.core import HParams, get_variant
from metasweep.core.conv import ConvNet
from metasweep.core.meta import meta_gradient, sample_noise
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks.synthetic import SyntheticImages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default="maml,mt-net")
    ap.add_argument("--meta-batch", type=int, default=8)
    args = ap.parse_args()
    d = torch.float64
    for name in args.variants.split(","):
        hp = HParams(alpha=0.4, inner_steps=1, meta_batch=args.meta_batch)
        base = Setup(SyntheticImages(), get_variant(name), hp, ConvNet.omniglot(5), 1, 15, device=args.device)
        g = torch.Generator().manual_seed(0)
        params = init_state(replace(base, device="cpu", dtype=d), 0).params
        batch = base.family.sample(g, args.meta_batch, 1, 15)
        noise = sample_noise(params, replace(base, device="cpu", dtype=d), g, args.meta_batch, 1)
        dev = {k: v.to(args.device) for k, v in params.items()}
        ref, _ = meta_gradient(dev, batch.to(args.device, d), {k: v.to(args.device) for k, v in noise.items()},
                               replace(base, dtype=d))
        f32 = ({k: v.float().to(args.device) for k, v in params.items()}, batch.to(args.device, torch.float32),
               {k: v.float().to(args.device) for k, v in noise.items()})
        modes = {"default": base, "tf32": replace(base, tf32=True), "nondeterministic": replace(base, deterministic=False)}
        out = {}
        for mode, setup in list(modes.items()) + [("cudnn-off", base)]:
            if mode == "cudnn-off":
                with torch.backends.cudnn.flags(enabled=False):
                    got, _ = meta_gradient(*f32, setup)
            else:
                got, _ = meta_gradient(*f32, setup)
            err = {k: float((got[k].double() - ref[k]).norm()) for k in ref}
            rel = sum(e * e for e in err.values()) ** 0.5 / sum(float(r.norm()) ** 2 for r in ref.values()) ** 0.5
            top = sorted(err, key=err.get, reverse=True)[:3]
            out[mode] = {"relative_error": float(f"{rel:.3g}"),
                         "worst": {k: [float(f"{err[k]:.3g}"), float(f"{float(ref[k].norm()):.3g}")] for k in top}}
        print(json.dumps({"variant": name, "device": args.device, "meta_batch": args.meta_batch, **out}))


if __name__ == "__main__":
    main()
