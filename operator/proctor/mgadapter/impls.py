"""The sample implementations by their public name, as manifests/samples reference them."""

from proctor.integrations.metamorphic_guard.impls import top_k_heap, top_k_sorted

__all__ = ["top_k_heap", "top_k_sorted"]
