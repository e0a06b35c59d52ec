"""eval stage of lmforge: loss on a split (`evaluate`), likelihood scoring (`scoring`),
multiple-choice and generation tasks (`multiple_choice`, `generation`, `metrics`, `tasks`), on a
checkpoint or an OpenAI-compatible endpoint (`lm`, `endpoint`), recorded by `report`, and an
lm-evaluation-harness adapter (`harness`)."""
