"""Evaluation: augmentation voting, `trm evaluate`, submission export, the HTML/markdown report.

    from trm.evaluation import Voter
    voter = Voter.from_dataset("data/arc2")
    voter.add(puzzle_identifiers, inputs, preds, q_halt_logits)
    result = voter.result()          # .metrics, .submission, .votes

Commands: `trm evaluate`, `trm vote`, `trm export-submission` (see docs/evaluation.md).
"""

from trm.evaluation.vote import Candidate, Voter, VoteResult

__all__ = ["Candidate", "Voter", "VoteResult"]
