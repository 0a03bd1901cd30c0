"""Test harness for Proctor's end-to-end tests.

A real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) built from Go modules, a pod runner that executes
marked pods as local processes, kwok node helpers and service fixtures
(Redis, moto's S3/SQS server).
"""
