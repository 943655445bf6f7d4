"""Train a LambdaResNet: the same program as the `lambda-train` command (see
lambda_kernels/train.py or `python examples/train.py --help`).

    python examples/train.py --epochs 5                       # digits, offline
    python examples/train.py --dataset cifar10 --data DIR --amp --channels-last
"""
import sys

from lambda_kernels.train import main

if __name__ == "__main__":
    sys.exit(main())
