"""The names the API is known by: its group and version, and the label, annotation and
finalizer keys the operator writes under the group.

One home for them, so the CRDs, the controller's watches and the pods it labels cannot drift
apart. The kinds and their plurals are derived from the model classes
(:mod:`proctor.api.v1alpha1`).
"""

from __future__ import annotations

GROUP = "proctor.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

KEY_PREFIX = f"{GROUP}/"
"""Every label and annotation key the operator owns starts with this."""

FINALIZER = f"{GROUP}/finalizer"

LABEL_RUN = f"{GROUP}/run"
LABEL_RUN_UID = f"{GROUP}/run-uid"
LABEL_POOL = f"{GROUP}/pool"
LABEL_CAPACITY = f"{GROUP}/capacity"
LABEL_CELL = f"{GROUP}/cell"
LABEL_SUITE_RUN = f"{GROUP}/suite-run"
LABEL_ISOLATION = f"{GROUP}/isolation"

ANNOTATION_CELL = f"{GROUP}/cell"
ANNOTATION_PROFILE = f"{GROUP}/profile"
ANNOTATION_ENQUEUED = f"{GROUP}/enqueued"
ANNOTATION_HOURLY_PRICE = f"{GROUP}/hourly-price"
"""On a node: its price per hour (a decimal, in the price table's currency); wins over the
operator's price table."""
ANNOTATION_CASE_SECONDS = f"{GROUP}/case-seconds"
"""On an EvalRun manifest: the declared cost of one case in seconds, for ``proctor plan``."""

# Well-known node labels and the label DaemonSet pods carry (Kubernetes' own keys).
ZONE_KEY = "topology.kubernetes.io/zone"
HOSTNAME_KEY = "kubernetes.io/hostname"
DAEMON_POD_LABEL = "pod-template-generation"
"""The DaemonSet controller labels every pod it creates with its template generation (from
the annotation apps/v1 always carries), so a selector can tell node agents from workloads."""
SYSTEM_NAMESPACE = "kube-system"
"""Static (mirror) pods and cluster add-ons live here: node agents, not neighbours."""

# Kueue's keys (sigs.k8s.io/kueue), read and written where a run opts in to Kueue admission.
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
KUEUE_QUEUE_LABEL = f"{KUEUE_GROUP}/queue-name"
"""On a pod: the LocalQueue whose ClusterQueue admits it; on a run: its ``spec.queueName``."""
KUEUE_PRIORITY_LABEL = f"{KUEUE_GROUP}/priority-class"
"""A WorkloadPriorityClass; copied from the run to its worker pods."""
KUEUE_MANAGED_LABEL = f"{KUEUE_GROUP}/managed"
"""Kueue's pod webhook sets it (``"true"``) on every pod it takes charge of."""
KUEUE_ADMISSION_GATE = f"{KUEUE_GROUP}/admission"
"""The scheduling gate Kueue's pod webhook puts on a pod until its workload is admitted."""
KUEUE_TERMINATION_CONDITION = "TerminationTarget"
"""The pod condition Kueue sets before it deletes a pod whose workload it evicted."""
