"""Ship ``expr_torchvision_compat.pth`` in the wheel root, for normal and editable installs alike.

hatchling does not apply ``force-include`` to editable wheels; a build hook has to say it for both.
hatchling names its own editable ``.pth`` with a leading underscore so it is processed first, which puts the
source tree on ``sys.path`` before our ``.pth`` imports ``expr``.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PTH = {"expr/_torchvision_compat/expr_torchvision_compat.pth": "expr_torchvision_compat.pth"}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "editable":
            build_data["force_include_editable"].update(PTH)
        else:
            build_data["force_include"].update(PTH)
