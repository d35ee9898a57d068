"""Volumes: one block volume per user that follows the user between servers (issue 13).

Owns: the `volumes` table (records.py is its only writer), the pure decision of a
volume's next step (steps.py) and the run that applies those steps through the provider
(runner.py, called by the autoscaler every run), and the backup jobs asked of the
server a volume is mounted on (backups.py: scheduled, final and the operator's; the
jobs' table is control.backup_jobs'), the operator's waiver of a final snapshot that
cannot be taken (final_waiver.py), the final snapshot of a cancelled user's volume no
live server holds (final_attach.py: attached to one for the job only), and moves to
another location through a backup and a restore: the `relocations` table
(relocations.py is its only writer), their pure decisions (relocation.py), their
start (relocate_start.py) and their run (relocate.py, called by runner.py), and the
operator's recovery of a user whose volume is lost (recover.py: a move with no source,
or an explicit start on an empty volume). The desired set reads the table to put
a volume in a user's spec only where it is attached (control/workers/assignments.py).
May import: the foundation modules, control.db, the domain packages (users, workers,
backup_jobs) and control.capacity (the provider interface and the autoscaler's
provisioner), never the HTTP layer.
"""
