"""The dataset kinds gaheads trains on; torch-free, so command-line parsers list them without loading torch."""

DATASET_KINDS = ("imagefolder", "cifar100", "mnist5k")
