"""The built-in architecture families, one module each, registered on import (timm's pattern); the order here is
the order their canonizers are tried in. A family of one's own is a module like these that calls
``register_family``: it need not live here (tests/test_zoo_families.py registers one)."""

from . import resnet, densenet, vit, convnext, efficientnet  # noqa: F401, I001 - registration order
