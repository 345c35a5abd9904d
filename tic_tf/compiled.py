"""Compiled functions cached per model, so repeated calls trace and compile once."""
import weakref

_CACHE = weakref.WeakKeyDictionary()


def cached(model, key, factory):
    """`factory()` for (model, key), built on first use and kept while the model lives."""
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = factory()
    return per_model[key]
