"""coi-watch: a host-side security supervisor for AI coding agents in Incus containers.

The distribution ``coi-watch`` has one import root, ``coi_watch``; setuptools maps the
repository folder ``supervisor/`` onto it (and ``detectors/``, ``responders/``, ``rules/``
onto ``coi_watch.detectors`` and so on). Never import the folder names themselves.
"""

__version__ = "0.1.0"
__all__ = ("__version__",)
