"""Adapters to training frameworks, each behind its optional extra (import the submodule:
`antdiff.integrations.accelerate` needs `ant-diffusion[accelerate]`)."""
