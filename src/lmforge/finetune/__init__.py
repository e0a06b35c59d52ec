"""Fine-tuning: classification heads and LoRA adapters on pretrained lmforge models."""
