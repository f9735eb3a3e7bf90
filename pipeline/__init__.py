"""alexnet-eval: torchvision's ImageNet AlexNet over Hugging Face image datasets, to Parquet."""
