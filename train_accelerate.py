"""Fine-tune a timm image classifier on a Hugging Face dataset.

    accelerate launch train_accelerate.py --dataset cifar10 --output-dir runs/cifar10
    python train_accelerate.py --help
"""
from classifier.train import main

if __name__ == "__main__":
    main()
