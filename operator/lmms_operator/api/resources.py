"""Compute and placement of an EvalRun's pods (``spec.resources``, ``spec.scheduling``).

``reconcile.job`` makes them the Job's: requests and limits, /dev/shm, an
Indexed Job over several nodes; nodeSelector, tolerations, affinity and Kueue's queue
label. Tolerations and affinity are the typed, bounded core/v1 types of ``corev1``;
``reconcile.placement`` checks them against the admin's placement policy.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from .base import DNS_LABEL, DNS_SUBDOMAIN, QUANTITY, ApiModel
from .corev1 import LABEL_MAP_SCHEMA, Affinity, LabelKey, LabelValue, Toleration

#: A domain-prefixed extended resource (nvidia.com/gpu), outside kubernetes.io.
EXTENDED_RESOURCE = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class ResourcesSpec(ApiModel):
    """Compute for the evaluation."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.nodes == 1 || self.gpus >= 1",
                    "message": "a multi-node run (nodes > 1) needs at least one GPU per node",
                    "fieldPath": ".gpus",
                }
            ]
        }
    )

    gpus: int = Field(default=1, ge=0, le=64, description="GPUs per node (pod).")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        description="Extended resource name of the GPUs, e.g. nvidia.com/gpu, amd.com/gpu, "
        "or a MIG profile such as nvidia.com/mig-1g.10gb: domain-prefixed, outside "
        "kubernetes.io.",
        max_length=253,
        pattern=EXTENDED_RESOURCE,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.split('/')[0].endsWith('kubernetes.io') && "
                    "!self.split('/')[0].endsWith('k8s.io')",
                    "message": "must be an extended resource, outside the kubernetes.io and "
                    "k8s.io domains",
                }
            ]
        },
    )
    cpu: str | None = Field(
        default=None,
        description="CPU request and limit (a quantity).",
        pattern=QUANTITY,
        max_length=64,
    )
    memory: str | None = Field(
        default=None,
        description="Memory request and limit (a quantity).",
        pattern=QUANTITY,
        max_length=64,
    )
    shared_memory: str | None = Field(
        default=None,
        description="Size of the memory-backed /dev/shm. Defaults to 8Gi when more than one "
        "GPU is requested; PyTorch data loaders and NCCL need it.",
        pattern=QUANTITY,
        max_length=64,
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Number of nodes (pods). More than one makes an Indexed Job with one pod "
        "per node and a headless Service for the torchrun rendezvous.",
    )


class SchedulingSpec(ApiModel):
    """Where the pods may run."""

    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description="Pod nodeSelector. Keys in node-role.kubernetes.io are refused (placement policy).",
        max_length=64,
        json_schema_extra=LABEL_MAP_SCHEMA,
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Pod tolerations (core/v1 Toleration). Each needs a key; keys in the kubernetes.io and k8s.io domains are refused, and the admin may narrow the rest (placement.allowedTolerationKeys).",
        max_length=32,
    )
    affinity: Affinity = Field(
        default_factory=Affinity,
        description="Pod affinity (core/v1 Affinity): at most 32 terms in all and 16 KiB. Pod (anti-)affinity terms may select pods of the run's own namespace only, unless the admin allows more (placement.crossNamespaceAffinity).",
    )
    priority_class_name: str | None = Field(
        default=None,
        description="Pod priorityClassName: only classes the admin lists "
        "(placement.allowedPriorityClasses); unset gets the cluster default.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue: the Job is labelled kueue.x-k8s.io/queue-name and "
        "created suspended; Kueue admits it (one Workload for all of its pods) when quota "
        "allows, and owns its suspend from then on. While waiting, the status shows the "
        "Workload's reason and message. spec.suspend holds a queued run by deactivating its "
        "Workload (spec.active: false), or by creating no Job while it never started.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    workload_priority_class_name: str | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass (with queueName): the Job is labelled "
        "kueue.x-k8s.io/priority-class. Kueue may preempt a run of lower priority for it; a "
        "preempted run is queued again and resumes from its cache, without counting as a "
        "failure or a retry. Only classes the admin lists (placement.allowedPriorityClasses).",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
