"""dereflect: single-image reflection removal for phones and edge devices.

Follows Zheng et al., "Distilling Reflection Dynamics for Single-Image Reflection Removal"
(ICCV Workshops 2021): a multi-view teacher learns how transmission and reflection move,
a single-image student learns to hallucinate that knowledge, and the student ships.
"""

__version__ = "0.1.0"
