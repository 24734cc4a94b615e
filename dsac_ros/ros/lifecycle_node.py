"""The relocalization node as a managed (lifecycle) node, for nav2's lifecycle_manager.

Run: ``ros2 run dsac_ros relocalize_lifecycle_node --ros-args --params-file
config/relocalize.yaml`` (same node name and parameters as relocalize_node). Transitions
(``/relocalize_node/change_state``, lifecycle_msgs):

  configure   loads the model, creates publishers, the TF listener and ~/relocalize
              (a missing or bad model, an invalid parameter: FAILURE, back to unconfigured);
  activate    subscribes to the camera: frames are localized from now on;
  deactivate  unsubscribes (pending ~/relocalize requests fail);
  cleanup     releases the model and everything configure created;
  shutdown    as cleanup, from any state.
Parameters are declared at construction, so they can be set before configure.
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from dsac_ros.ros.node import (
    NODE_NAME,
    OwnsRelocalization,
    help_text,
    load_relocalizer,
    run_node,
    wants_help,
)
from dsac_ros.ros.parameters import add_parameter_callbacks, current_settings, declare_parameters
from dsac_ros.ros.relocalization import Relocalization

__all__ = ['RelocalizeLifecycleNode', 'main']


class RelocalizeLifecycleNode(OwnsRelocalization, LifecycleNode):
    """Managed variant of `dsac_ros.ros.node.RelocalizeNode` (see the module doc).

    Args:
        relocalizer: as for RelocalizeNode (None: loaded from model_path at configure).
        **node_kwargs: forwarded to rclpy's LifecycleNode.

    Raises:
        ValueError: an invalid parameter value at construction.
    """

    def __init__(self, relocalizer=None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._given_relocalizer = relocalizer
        self._core: Relocalization | None = None
        declare_parameters(self)
        add_parameter_callbacks(self, self._on_parameters)

    def _on_parameters(self, settings, names: set[str]) -> None:
        if self._core is not None:
            self._core.update_settings(settings, names)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = current_settings(self)
            relocalizer = self._given_relocalizer or load_relocalizer(settings, self.get_logger())
            self._core = Relocalization(self, relocalizer, settings)
        except (ValueError, FileNotFoundError) as exc:
            self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._core.activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._core.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS


def main(args: list[str] | None = None) -> int:
    """Entry point of ``relocalize_lifecycle_node`` (starts unconfigured)."""
    if wants_help(list(sys.argv[1:] if args is None else args)):
        sys.stdout.write(help_text().replace('relocalize_node [', 'relocalize_lifecycle_node [',
                                             1))
        return 0
    return run_node(RelocalizeLifecycleNode, args)


if __name__ == '__main__':
    sys.exit(main())
