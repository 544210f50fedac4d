"""MMEngine registries of the ``equi_ext`` scope: children of MMSegmentation's, holding nothing of their own.

A config that inherits a shipped config as ``_base_ = ['equi_ext::demo/...']`` gets ``_scope_='equi_ext'`` on
the components it inherits (MMEngine's rule for bases from another package). MMEngine then imports this
module and builds those components from these registries, which find MMSeg's components and equi-ext's
(registered in MMSeg's registries by ``equi_ext.mmseg``) through their parent.
"""

import mmseg.registry as _mmseg_registry
from mmengine.registry import Registry

from . import mmseg as _adapter  # noqa: F401  (registers equi-ext's components)

__all__ = list(_mmseg_registry.__all__)
for _name in __all__:
    _parent = getattr(_mmseg_registry, _name)
    globals()[_name] = Registry(_parent.name, parent=_parent, scope="equi_ext")
