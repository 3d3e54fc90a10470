"""Training: a recipe → a LoRA adapter with TRL's SFTTrainer and PEFT (``lexlora train``)."""
