"""The burst model: the multi-view teacher as a shipped network, frames in, clean middle frame out.

Why a subclass and not the teacher itself: the teacher's forward returns a dict (layers, flows, D)
for training; a deployed graph needs one input and one output, like the students. `BurstTeacher`
has the teacher's modules and state-dict keys exactly (a `teacher-base` checkpoint loads into
`burst-base` unchanged) and returns only the transmission of the middle frame.

Input contract (what export, the manifest and the runtime read): `input_frames` = 5 frames,
(N, 5, 3, H, W) float32 RGB in [0,1], the reference frame in the middle (index 2); H and W
multiples of `size_multiple`. Output (N, 3, H, W). No privileged inputs: frames only.
"""

from __future__ import annotations

import torch

from dereflect.models.teacher import Teacher, TeacherConfig


class BurstTeacher(Teacher):
    """Teacher -> (N,3,H,W) transmission of the middle frame; frames are the only input."""

    #: Frames the exported graph takes (the teacher pools any number of neighbours; graphs fix it).
    input_frames = 5

    def __init__(self, config: TeacherConfig | None = None) -> None:
        config = config or TeacherConfig()
        if config.privileged:
            raise ValueError("a burst model takes frames only: privileged (frozen ImageNet/HED) features are for training teachers")
        super().__init__(config)
        self.input_frames = int(config.n_frames)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(frames)["transmission"]
