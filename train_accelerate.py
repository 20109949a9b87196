"""Fine-tune a timm image classifier on a Hugging Face dataset.

    accelerate launch train_accelerate.py --dataset cifar10 --output-dir runs/cifar10
    python train_accelerate.py --help
"""
from classifier.options import parse_args

if __name__ == "__main__":
    options = parse_args()  # first: --help and a mistyped option answer before torch is imported (seconds)
    from classifier.train import main

    main(options=options)
