"""Which Grad-CAM library: the latency of one heatmap with torchcam (the app's path, classifier.explain's
class_activation) against pytorch-grad-cam's GradCAM on the same target layer, same model, same image, one torch
thread; and whether the two heatmaps agree (Pearson correlation at the input's size).

grad-cam (pytorch-grad-cam) is not in requirements (only this comparison uses it; it brings OpenCV). Install it
beside the project's environment, e.g. in a throw-away venv that sees the project's packages through a .pth file:

    python -m venv /tmp/libvenv
    python -c "import site; print(site.getsitepackages()[0])" > /tmp/libvenv/lib/python3.11/site-packages/project.pth
    /tmp/libvenv/bin/pip install grad-cam==1.5.7 netcal==1.4.0   # netcal: benchmarks/calibration_libraries.py
    /tmp/libvenv/bin/python -m benchmarks.explain_libraries
    /tmp/libvenv/bin/python -m benchmarks.explain_libraries --model models/intel-resnet18 --repeats 100

(The second line runs with the project's python. `venv --system-site-packages` made from the project's venv is not
enough: it sees the base interpreter's packages, not the venv's.)

Each library is warmed up, then the calls alternate (forward, torchcam, grad-cam, forward, ...) for --repeats rounds,
so a neighbour's load falls on all three alike; p50 is the median of each one's rounds. The heatmap is of the class
the model predicts for the image alone (no mirror), as /explain makes it. torchcam's map is at the layer's
resolution; it is upsampled bilinearly to the input size, as pytorch-grad-cam does with OpenCV, before comparing.
"""
from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classifier.explain import class_activation, target_layer
from classifier.images import open_rgb
from classifier.model import load_folder
from classifier.train import describe_hardware


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/cifar10-resnet18"))
    parser.add_argument("--image", type=Path, help="default: the model's first gallery image")
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds after warm-up (median)")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cv2.setNumThreads(1)  # its resize of the map to the input size: one thread too
    loaded = load_folder(args.model)
    model = loaded.model.eval()
    image_path = args.image or next(iter(sorted((args.model / "samples" / "gallery").glob("*.png"))))
    x = loaded.transform()(open_rgb(str(image_path))).unsqueeze(0)
    size = x.shape[-1]
    with torch.inference_mode():
        class_index = int(model(x).argmax())
    layer = target_layer(model)
    grad_cam = GradCAM(model=model, target_layers=[model.get_submodule(layer)])  # hooks once, reused per call
    targets = [ClassifierOutputTarget(class_index)]

    def forward():
        with torch.inference_mode():
            return model(x)

    calls = {
        "forward alone (reference)": forward,
        "torchcam": lambda: class_activation(model, x, class_index),
        "pytorch-grad-cam": lambda: grad_cam(input_tensor=x, targets=targets),
    }
    versions = {"forward alone (reference)": f"torch {torch.__version__}", "torchcam": version("torchcam"),
                "pytorch-grad-cam": f"grad-cam {version('grad-cam')}"}
    for fn in calls.values():
        for _ in range(args.warmup):
            fn()
    seconds = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    p50 = {name: 1000 * float(np.median(s)) for name, s in seconds.items()}
    p95 = {name: 1000 * float(np.percentile(s, 95)) for name, s in seconds.items()}

    torchcam_map = class_activation(model, x, class_index)  # (h, w) at layer4's resolution, in [0, 1]
    upsampled = F.interpolate(torchcam_map[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    grad_cam_map = torch.from_numpy(grad_cam(input_tensor=x, targets=targets)[0]).float()  # (size, size), in [0, 1]
    pearson = float(torch.corrcoef(torch.stack([upsampled.flatten(), grad_cam_map.flatten()]))[0, 1])
    peak = [np.unravel_index(int(m.argmax()), m.shape) for m in (upsampled, grad_cam_map)]

    print(f"machine: {describe_hardware(torch.device('cpu'))}; torch threads {torch.get_num_threads()}, "
          f"OpenCV threads {cv2.getNumThreads()}")
    print(f"model: {args.model} at {size} px; image {image_path} -> class {class_index} "
          f"({loaded.label_names[class_index]}); target layer {layer} "
          f"({tuple(torchcam_map.shape)} map); {args.repeats} rounds after {args.warmup} warm-up calls each\n")
    print("| library | version | p50 ms | p95 ms | ratio to torchcam (p50) |")
    print("|---|---|---|---|---|")
    for name in calls:
        print(f"| {name} | {versions[name]} | {p50[name]:.1f} | {p95[name]:.1f} | "
              f"{p50[name] / p50['torchcam']:.2f} |")
    print(f"\nagreement at {size}x{size} (torchcam upsampled bilinearly): Pearson r = {pearson:.4f}; "
          f"max |difference| = {float((upsampled - grad_cam_map).abs().max()):.3f}; "
          f"peak at {tuple(map(int, peak[0]))} vs {tuple(map(int, peak[1]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
