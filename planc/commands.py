"""The command lines that start a generated script: on one machine, or on several nodes with
torchrun's rendezvous (run by hand on every node, or by Slurm's srun).

A plan spans nodes when its world is larger than `mesh.gpus_per_node`; then every node runs one
torchrun agent with --nproc-per-node = the devices of a node, and the agents meet at a c10d
rendezvous on the first node (HOST:PORT) under a run id. torchrun gives each process its global
rank, so the script itself does not change.
"""
from __future__ import annotations

from dataclasses import dataclass

PORT = 29500  # torchrun's default rendezvous port


@dataclass(frozen=True)
class Launch:
    world: int
    per_node: int  # processes per node
    script: str
    run_id: str

    @property
    def nodes(self) -> int:
        return -(-self.world // self.per_node)

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def single(self) -> str:
        """One machine, every process on it."""
        return f"torchrun --standalone --nproc-per-node {self.world} {self.script}"

    def node(self, host: str = "HOST", port: int = PORT, run_id: str | None = None) -> str:
        """What every node runs (the same line on each; HOST is the first node's address)."""
        return (f"torchrun --nnodes {self.nodes} --nproc-per-node {self.per_node} --rdzv-backend c10d "
                f"--rdzv-endpoint {host}:{port} --rdzv-id {run_id or self.run_id} {self.script}")

    def slurm(self) -> str:
        """One torchrun agent per node from a Slurm allocation, meeting at the allocation's first node."""
        head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
        return (f"srun --nodes {self.nodes} --ntasks-per-node 1 " +
                self.node(host=head, run_id='"$SLURM_JOB_ID"'))

    def lines(self) -> list[str]:
        """The launch as a person reads it (the script's docstring, `planc explain`)."""
        if not self.multi_node:
            return ["Launch from the checkout:", f"    {self.single()}"]
        return [f"Launch on {self.nodes} nodes of {self.per_node} processes each ({self.world} in all): run this "
                f"on every node,", "from the checkout, with HOST the first node's address:", f"    {self.node()}",
                "or from a Slurm batch script that holds the nodes:", f"    {self.slurm()}"]


def launch(world: int, gpus_per_node: int, script: str, run_id: str) -> Launch:
    """`gpus_per_node` (the plan's mesh.gpus_per_node) is the processes one node runs, CPU plans
    included."""
    return Launch(world, max(1, min(world, gpus_per_node)), script, run_id)
