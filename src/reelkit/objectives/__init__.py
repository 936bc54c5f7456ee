"""Training objectives, one module per family: flow matching (the teacher), consistency distillation (the
T2V-Turbo student), masked losses (MarDini) and reconstruction (the VAEs). Recipes in ``reelkit.train`` combine
them with data, models and a loop."""
