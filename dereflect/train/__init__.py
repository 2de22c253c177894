"""Training: losses, the shared loop, the teacher stage and the student (distillation) stage."""
