"""Training: SFT (SL-CAI) now; preference model, DPO and PPO next."""
