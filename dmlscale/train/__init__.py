"""Training pieces: gradient caching (step), the DeepSpeed engine, checkpoints, schedules, export.

Kept light: deepspeed is imported only inside the functions that need it (engine, checkpoint, export).
"""
