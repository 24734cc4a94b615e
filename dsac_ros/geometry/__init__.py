"""Pure-torch, batched, differentiable geometry: camera model, SE(3), PnP, Kabsch, scoring.

Conventions: OpenCV camera frame; ``T_cw`` world-to-camera, ``T_wc`` camera-to-world;
quaternions (x, y, z, w); metres, radians inside, degrees and pixels for reported errors.
"""

from dsac_ros.geometry.camera import (
    backproject,
    cell_centers,
    make_intrinsics,
    normalize_pixels,
    project,
    scale_intrinsics,
)
from dsac_ros.geometry.kabsch import kabsch
from dsac_ros.geometry.pnp import pnp_information, refine_pnp, solve_p4p
from dsac_ros.geometry.scoring import hard_inliers, reprojection_errors, soft_inlier_count
from dsac_ros.geometry.transforms import (
    axis_angle_to_matrix,
    compose_se3,
    invert_se3,
    make_se3,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    pose_errors,
    pose_loss,
    quaternion_to_matrix,
    rotation_error_deg,
    se3_exp,
    transform_points,
    translation_error_m,
)

__all__ = [
    'axis_angle_to_matrix', 'backproject', 'cell_centers', 'compose_se3', 'hard_inliers',
    'invert_se3', 'kabsch', 'make_intrinsics', 'make_se3', 'matrix_to_axis_angle',
    'matrix_to_quaternion', 'normalize_pixels', 'pnp_information', 'pose_errors', 'pose_loss',
    'project', 'quaternion_to_matrix', 'refine_pnp', 'reprojection_errors', 'rotation_error_deg',
    'scale_intrinsics', 'se3_exp', 'soft_inlier_count', 'solve_p4p', 'transform_points',
    'translation_error_m',
]
