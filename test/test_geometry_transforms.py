"""Camera model and SE(3) helpers against OpenCV / SciPy as independent references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.linalg import expm
from scipy.spatial.transform import Rotation, Slerp
import torch

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
from dsac_ros.geometry.transforms import (
    axis_angle_to_matrix,
    compose_se3,
    hat,
    invert_se3,
    make_se3,
    matrix_to_axis_angle,
    matrix_to_pose_np,
    matrix_to_quaternion,
    matrix_to_quaternion_np,
    pose_errors,
    pose_errors_np,
    pose_loss,
    pose_to_matrix_np,
    quaternion_slerp_np,
    quaternion_to_matrix,
    quaternion_to_matrix_np,
    rotation_error_deg,
    se3_exp,
    transform_points,
    translation_error_m,
)

F64 = torch.float64


def _random_axis_angles(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=F64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(n, 1, generator=g, dtype=F64) * (np.pi - 1e-3)
    aa = axis * angle
    # Edge cases: zero, tiny, just below pi, around the Taylor switch.
    aa[0] = 0
    aa[1] = torch.tensor([1e-9, -2e-9, 0.5e-9])
    aa[2] = torch.tensor([0.0, 0.6, 0.8]) * (np.pi - 1e-6)
    aa[3] = torch.tensor([0.0, 0.0, 1.0]) * 1.0001e-2
    aa[4] = torch.tensor([0.0, 0.0, 1.0]) * 0.9999e-2
    return aa


K_SQUARE = [[525.0, 0.0, 320.0], [0.0, 525.0, 240.0], [0.0, 0.0, 1.0]]
K_NONSQUARE = [[585.0, 0.0, 316.5], [0.0, 540.0, 247.25], [0.0, 0.0, 1.0]]


# ---------------------------------------------------------------------------------- camera


def test_cell_centers_follow_the_stride_convention():
    c = cell_centers(3, 5, stride=8, dtype=F64)
    assert c.shape == (2, 3, 5)
    i, j = 2, 3
    assert c[0, i, j].item() == 8 * j + 4  # u = column
    assert c[1, i, j].item() == 8 * i + 4  # v = row
    c4 = cell_centers(2, 2, stride=4)
    assert c4.dtype == torch.get_default_dtype()
    assert c4[:, 1, 1].tolist() == [6.0, 6.0]
    with pytest.raises(ValueError):
        cell_centers(0, 4)


@pytest.mark.parametrize('K_list', [K_SQUARE, K_NONSQUARE])
def test_project_matches_cv2_project_points(K_list):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-2, 2, (200, 2)), rng.uniform(0.5, 6, (200, 1))], 1)
    K = np.array(K_list)
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, None)
    ours = project(torch.from_numpy(pts), torch.tensor(K_list, dtype=F64))
    np.testing.assert_allclose(ours.numpy(), ref[:, 0], atol=1e-9)
    # Round trip through backproject with the depth.
    back = backproject(ours, torch.from_numpy(pts[:, 2]), torch.tensor(K_list, dtype=F64))
    np.testing.assert_allclose(back.numpy(), pts, atol=1e-9)


def test_project_batched_K_and_skew():
    K = make_intrinsics(torch.tensor([500.0, 600.0]), 510.0, 300.0, 200.0, skew=2.0, dtype=F64)
    assert K.shape == (2, 3, 3)
    pts = torch.tensor([[[0.1, -0.2, 2.0], [0.3, 0.4, 3.0]]] * 2, dtype=F64)  # (2, 2, 3)
    uv = project(pts, K)
    assert uv.shape == (2, 2, 2)
    expected_u = K[1, 0, 0] * 0.3 / 3 + 2.0 * 0.4 / 3 + 300
    assert abs(uv[1, 1, 0].item() - expected_u.item()) < 1e-9
    np.testing.assert_allclose(normalize_pixels(uv, K).numpy(),
                               (pts[..., :2] / pts[..., 2:]).numpy(), atol=1e-12)
    # Points on the camera plane stay finite.
    assert torch.isfinite(project(torch.tensor([[1.0, 1.0, 0.0]], dtype=F64), K[0])).all()


def test_scale_intrinsics_matches_resized_pixel_centres():
    K = torch.tensor(K_NONSQUARE, dtype=F64)
    pts = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]], dtype=F64)
    uv = project(pts, K)
    for sx, sy in [(0.5, 0.5), (0.25, 0.5), (2.0, 1.5)]:
        uv_s = project(pts, scale_intrinsics(K, sx, sy))
        expected = torch.stack([(uv[:, 0] + 0.5) * sx - 0.5, (uv[:, 1] + 0.5) * sy - 0.5], -1)
        torch.testing.assert_close(uv_s, expected)
    # OpenCV's resize maps pixel centres the same way: a bright pixel lands where we predict.
    img = np.zeros((480, 640), np.float32)
    img[240:242, 320:322] = 1.0  # 2x2 block centred at (320.5, 240.5)
    small = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
    v, u = np.unravel_index(np.argmax(small), small.shape)
    assert (u, v) == (160, 120)  # (320.5 + 0.5) * 0.5 - 0.5 = 160
    with pytest.raises(ValueError):
        scale_intrinsics(K, 0.0, 1.0)


def test_camera_gradcheck_and_shapes():
    K = torch.tensor(K_NONSQUARE, dtype=F64, requires_grad=True)
    pts = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(project, (pts, K))
    with pytest.raises(ValueError):
        project(torch.zeros(4, 2), K)
    with pytest.raises(ValueError):
        project(torch.zeros(4, 3), torch.eye(4))


# ---------------------------------------------------------------------------------- rotations


def test_axis_angle_matches_cv2_rodrigues():
    aa = _random_axis_angles(300, 1)
    R = axis_angle_to_matrix(aa)
    for a, r in zip(aa.numpy(), R.numpy()):
        ref, _ = cv2.Rodrigues(a)
        np.testing.assert_allclose(r, ref, atol=1e-12)
    back = matrix_to_axis_angle(R)
    torch.testing.assert_close(back, aa, atol=1e-7, rtol=0)  # near pi: 1e-6 from pi
    torch.testing.assert_close(back[:2], aa[:2], atol=1e-15, rtol=0)
    for r, b in zip(R.numpy()[5:50], back.numpy()[5:50]):
        np.testing.assert_allclose(cv2.Rodrigues(r)[0][:, 0], b, atol=1e-10)


def test_axis_angle_at_exactly_pi_is_a_valid_representation():
    aa = torch.tensor([[np.pi, 0, 0], [0, 0, -np.pi], [0, np.pi / 2 ** 0.5, np.pi / 2 ** 0.5]],
                      dtype=F64)
    R = axis_angle_to_matrix(aa)
    back = matrix_to_axis_angle(R)
    torch.testing.assert_close(back.norm(dim=-1), torch.full((3,), np.pi, dtype=F64))
    torch.testing.assert_close(axis_angle_to_matrix(back), R, atol=1e-12, rtol=0)


def test_quaternion_matches_scipy_xyzw():
    aa = _random_axis_angles(300, 2)
    R = axis_angle_to_matrix(aa)
    q = matrix_to_quaternion(R)
    ref = Rotation.from_matrix(R.numpy()).as_quat()  # (x, y, z, w)
    ref = ref * np.where(ref[:, 3:] < 0, -1, 1)
    np.testing.assert_allclose(q.numpy()[3:], ref[3:], atol=1e-12)  # 0..2: w ~ 0 sign ties
    assert (q[:, 3] >= 0).all()
    torch.testing.assert_close(quaternion_to_matrix(q), R, atol=1e-12, rtol=0)
    # Unnormalised input is normalised.
    np.testing.assert_allclose(quaternion_to_matrix(3 * q[5:9]).numpy(),
                               Rotation.from_quat(ref[5:9]).as_matrix(), atol=1e-12)


def test_se3_exp_matches_matrix_exponential_and_inverse():
    g = torch.Generator().manual_seed(3)
    xi = torch.randn(20, 6, generator=g, dtype=F64)
    xi[0] = 0
    xi[1, 3:] = 1e-9
    T = se3_exp(xi)
    for x, t in zip(xi.numpy(), T.numpy()):
        A = np.zeros((4, 4))
        A[:3, :3] = hat(torch.from_numpy(x[3:])).numpy()
        A[:3, 3] = x[:3]
        np.testing.assert_allclose(t, expm(A), atol=1e-12)
    eye = torch.eye(4, dtype=F64).expand(20, 4, 4)
    torch.testing.assert_close(compose_se3(invert_se3(T), T), eye, atol=1e-12, rtol=0)
    pts = torch.randn(20, 7, 3, generator=g, dtype=F64)
    moved = transform_points(T, pts)
    torch.testing.assert_close(transform_points(invert_se3(T), moved), pts)
    torch.testing.assert_close(moved[3, 2], T[3, :3, :3] @ pts[3, 2] + T[3, :3, 3])
    # (B, H, W, 3) points with (B, 4, 4) transforms.
    assert transform_points(T[:2], torch.zeros(2, 4, 5, 3, dtype=F64)).shape == (2, 4, 5, 3)


def test_pose_errors_against_cv2_and_loss_is_max():
    g = torch.Generator().manual_seed(4)
    T_gt = se3_exp(torch.randn(30, 6, generator=g, dtype=F64))
    T_est = se3_exp(0.1 * torch.randn(30, 6, generator=g, dtype=F64)) @ T_gt
    deg, m = pose_errors(T_est, T_gt)
    for te, tg, d, mm in zip(T_est.numpy(), T_gt.numpy(), deg.numpy(), m.numpy()):
        rel = te[:3, :3].T @ tg[:3, :3]
        assert abs(np.degrees(np.linalg.norm(cv2.Rodrigues(rel)[0])) - d) < 1e-8
        c_est, c_gt = -te[:3, :3].T @ te[:3, 3], -tg[:3, :3].T @ tg[:3, 3]
        assert abs(np.linalg.norm(c_est - c_gt) - mm) < 1e-12
    torch.testing.assert_close(pose_loss(T_est, T_gt), torch.maximum(deg, 100 * m))
    # The camera centre is the translation of T_wc.
    torch.testing.assert_close(
        translation_error_m(invert_se3(T_est)[:, :3, 3], invert_se3(T_gt)[:, :3, 3]), m)


def test_gradcheck_transforms():
    g = torch.Generator().manual_seed(5)
    aa = (0.7 * torch.randn(4, 3, generator=g, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    small = (1e-4 * torch.randn(2, 3, generator=g, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (small,))
    assert torch.autograd.gradcheck(lambda a: matrix_to_axis_angle(axis_angle_to_matrix(a)),
                                    (aa,))
    # Near pi the symmetric-part branch is used (angle 2.9 rad).
    big = (2.9 * torch.nn.functional.normalize(torch.randn(3, 3, generator=g, dtype=F64),
                                               dim=-1)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: matrix_to_axis_angle(axis_angle_to_matrix(a)),
                                    (big,))
    T = se3_exp(torch.randn(3, 6, generator=g, dtype=F64)).requires_grad_()
    pts = torch.randn(3, 5, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(transform_points, (T, pts))
    xi = torch.randn(3, 6, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(se3_exp, (xi,))
    q = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))
    assert torch.autograd.gradcheck(lambda a: matrix_to_quaternion(axis_angle_to_matrix(a)),
                                    (aa,))


def test_gradcheck_pose_loss_away_from_kink():
    g = torch.Generator().manual_seed(6)
    T_gt = se3_exp(torch.randn(2, 6, generator=g, dtype=F64))
    # Rotation-dominated (10 deg vs ~1 cm) and translation-dominated cases.
    xi_rot = torch.tensor([[0.01, 0.0, 0.0, 0.17, 0.0, 0.0], [0.3, 0.1, 0.0, 0.01, 0.0, 0.0]],
                          dtype=F64, requires_grad=True)

    def loss(xi):
        return pose_loss(se3_exp(xi) @ T_gt, T_gt)

    deg, m = pose_errors(se3_exp(xi_rot) @ T_gt, T_gt)
    assert deg[0] > 3 * 100 * m[0] and 100 * m[1] > 3 * deg[1]
    assert torch.autograd.gradcheck(loss, (xi_rot,))


def test_gradients_finite_at_identity():
    zero = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    R = axis_angle_to_matrix(zero)
    T = make_se3(R, torch.zeros(2, 3, dtype=F64))
    total = (rotation_error_deg(R, torch.eye(3, dtype=F64)).sum()
             + matrix_to_axis_angle(R).sum() + pose_loss(T, T.detach()).sum()
             + matrix_to_quaternion(R).sum())
    total.backward()
    assert torch.isfinite(zero.grad).all()
    # d(axis_angle)/d(axis_angle) is the identity at 0.
    zero2 = torch.zeros(3, dtype=F64, requires_grad=True)
    J = torch.autograd.functional.jacobian(
        lambda a: matrix_to_axis_angle(axis_angle_to_matrix(a)), zero2)
    torch.testing.assert_close(J, torch.eye(3, dtype=F64))


def test_shape_errors():
    with pytest.raises(ValueError, match='axis_angle'):
        axis_angle_to_matrix(torch.zeros(4, 4))
    with pytest.raises(ValueError, match='R'):
        matrix_to_quaternion(torch.zeros(3, 4))
    with pytest.raises(ValueError, match='quaternion'):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match='T'):
        invert_se3(torch.zeros(3, 3))
    with pytest.raises(ValueError, match='points'):
        transform_points(torch.eye(4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match='xi'):
        se3_exp(torch.zeros(5))
    with pytest.raises(ValueError, match='floating'):
        axis_angle_to_matrix(torch.zeros(3, dtype=torch.long))


def test_numpy_entry_points_match_scipy_and_torch():
    rotations = Rotation.random(20, random_state=3)
    R, q_ref = rotations.as_matrix(), rotations.as_quat()
    q = matrix_to_quaternion_np(R)
    q_ref = np.where(q_ref[:, 3:] < 0, -q_ref, q_ref)
    np.testing.assert_allclose(q, q_ref, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix_np(2 * q), R, atol=1e-12)
    T = pose_to_matrix_np([1.0, -2.0, 0.5], q[0])
    translation, quat = matrix_to_pose_np(T)
    np.testing.assert_allclose(translation, [1.0, -2.0, 0.5])
    np.testing.assert_allclose(quat, q[0], atol=1e-12)
    with pytest.raises(ValueError, match='finite 4x4'):
        matrix_to_pose_np(np.full((4, 4), np.nan))
    # slerp against SciPy, also across the double cover (q and -q are one rotation).
    for alpha in (0.0, 0.3, 1.0):
        expected = Slerp([0, 1], rotations[:2])([alpha]).as_matrix()[0]
        got = quaternion_to_matrix_np(quaternion_slerp_np(q[0], -q[1], alpha))
        np.testing.assert_allclose(got, expected, atol=1e-12)
    # Nearly equal rotations take the normalised-lerp branch.
    near = (q[0] + 1e-5 * np.array([1.0, 0, 0, 0])) / np.linalg.norm(q[0] + [1e-5, 0, 0, 0])
    np.testing.assert_allclose(np.linalg.norm(quaternion_slerp_np(q[0], near, 0.5)), 1.0)


def test_numpy_pose_errors_in_both_conventions():
    T_wc = se3_exp(torch.tensor([[0.3, -0.2, 0.1, 0.2, -0.1, 0.4],
                                 [0.0, 0.1, 0.0, 0.0, 0.05, 0.0]], dtype=F64)).numpy()
    deg, m = pose_errors_np(T_wc[:1], T_wc[1:], 'T_wc')
    deg_cw, m_cw = pose_errors_np(np.linalg.inv(T_wc[:1]), np.linalg.inv(T_wc[1:]))
    np.testing.assert_allclose(deg, deg_cw, rtol=1e-12)
    np.testing.assert_allclose(m, np.linalg.norm(T_wc[0, :3, 3] - T_wc[1, :3, 3]), rtol=1e-12)
    np.testing.assert_allclose(m_cw, m, rtol=1e-12)
    with pytest.raises(ValueError, match='convention'):
        pose_errors_np(T_wc, T_wc, 'wc')


def test_numpy_intrinsics_check_and_scaling():
    K = np.array([[500.0, 0.0, 319.5], [0.0, 480.0, 239.5], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(as_intrinsics_np(K.tolist()), K)
    np.testing.assert_allclose(scale_intrinsics_np(K, 0.5, 0.25),
                               scale_intrinsics(torch.from_numpy(K), 0.5, 0.25).numpy())
    np.testing.assert_allclose(scale_intrinsics_np(K, 0.5, 0.5)[:2, 2], [159.5, 119.5])
    for bad, match in ((K[:2], 'shape'), (np.where(K == 500.0, np.nan, K), 'NaN'),
                       (np.where(K == 500.0, -1.0, K), 'focal'),
                       (np.where(K == 1.0, 2.0, K), 'upper triangular'),
                       ('K', 'numbers')):
        with pytest.raises(ValueError, match=match):
            as_intrinsics_np(bad, 'K_33')


def test_moved_pose_covariance_matches_sampled_rigid_motion():
    """Camera covariance in the map -> the base's (a lever arm of 0.3 m): perturb the camera
    pose (position + rotation about the map axes), carry the base along, compare covariances."""
    from dsac_ros.geometry.transforms import (
        inflate_pose_covariance_np,
        move_pose_covariance_np,
    )

    rng = np.random.default_rng(4)
    A = rng.normal(size=(6, 6)) * 1e-2
    cov_cam = A @ A.T + np.diag([1e-5] * 6)
    T_map_cam = pose_to_matrix_np([1.0, 2.0, 0.5], [0.2, -0.4, 0.1, 0.9])
    T_cam_base = pose_to_matrix_np([0.1, 0.25, -0.12], [0.5, -0.5, 0.5, 0.5])
    T_map_base = T_map_cam @ T_cam_base
    samples = rng.multivariate_normal(np.zeros(6), cov_cam, size=20000)
    R_cam = Rotation.from_rotvec(samples[:, 3:]) * Rotation.from_matrix(T_map_cam[:3, :3])
    p_base = T_map_cam[:3, 3] + samples[:, :3] + R_cam.apply(T_cam_base[:3, 3])
    R_base = R_cam * Rotation.from_matrix(T_cam_base[:3, :3])
    d_rot = (R_base * Rotation.from_matrix(T_map_base[:3, :3]).inv()).as_rotvec()
    moved = np.concatenate([p_base - T_map_base[:3, 3], d_rot], axis=1)
    expected = move_pose_covariance_np(cov_cam, T_map_base[:3, 3] - T_map_cam[:3, 3])
    np.testing.assert_allclose(np.cov(np.asarray(moved).T), expected, atol=0.05 * expected.max())
    np.testing.assert_allclose(move_pose_covariance_np(cov_cam, np.zeros(3)), cov_cam)
    inflated = inflate_pose_covariance_np(cov_cam, 2.0, 0.01, 0.02)
    np.testing.assert_allclose(np.diag(inflated) - 2 * np.diag(cov_cam), [1e-4] * 3 + [4e-4] * 3)
    with pytest.raises(ValueError, match='scale'):
        inflate_pose_covariance_np(cov_cam, 0.0)
