"""Batched, differentiable geometry in torch (camera model, SE(3), PnP, Kabsch, scoring), with
numpy entry points (``*_np``) for quaternions, poses, pose errors and intrinsics.

Conventions: OpenCV camera frame; ``T_cw`` world-to-camera, ``T_wc`` camera-to-world;
quaternions (x, y, z, w); metres, radians inside, degrees and pixels for reported errors.
"""

from dsac_ros.geometry.camera import (
    as_intrinsics_np,
    backproject,
    cell_centers,
    make_intrinsics,
    normalize_pixels,
    project,
    scale_intrinsics,
    scale_intrinsics_np,
)
from dsac_ros.geometry.kabsch import kabsch
from dsac_ros.geometry.pnp import pnp_information, refine_pnp, resolve_pnp, solve_p4p
from dsac_ros.geometry.scoring import (
    hard_inliers,
    reprojection_error_maps,
    reprojection_errors,
    soft_inlier_count,
)
from dsac_ros.geometry.transforms import (
    axis_angle_to_matrix,
    compose_se3,
    invert_se3,
    make_se3,
    matrix_to_axis_angle,
    matrix_to_pose_np,
    matrix_to_quaternion,
    matrix_to_quaternion_np,
    perturb_poses,
    pose_errors,
    pose_errors_np,
    pose_loss,
    pose_to_matrix_np,
    quaternion_slerp,
    quaternion_to_matrix,
    quaternion_to_matrix_np,
    rotation_error_deg,
    se3_exp,
    transform_points,
    translation_error_m,
)

__all__ = [
    'as_intrinsics_np', 'axis_angle_to_matrix', 'backproject', 'cell_centers', 'compose_se3',
    'hard_inliers', 'invert_se3', 'kabsch', 'make_intrinsics', 'make_se3',
    'matrix_to_axis_angle', 'matrix_to_pose_np', 'matrix_to_quaternion',
    'matrix_to_quaternion_np', 'normalize_pixels', 'perturb_poses', 'pnp_information',
    'pose_errors', 'pose_errors_np', 'pose_loss', 'pose_to_matrix_np', 'project',
    'quaternion_slerp',
    'quaternion_to_matrix', 'quaternion_to_matrix_np', 'refine_pnp', 'reprojection_error_maps',
    'reprojection_errors', 'resolve_pnp', 'rotation_error_deg', 'scale_intrinsics',
    'scale_intrinsics_np', 'se3_exp', 'soft_inlier_count', 'solve_p4p', 'transform_points',
    'translation_error_m',
]
