# Conveniences; the README's two commands are ./scripts/demo and ./scripts/test.
.PHONY: demo test lint bench docs
demo:
	./scripts/demo
test:
	./scripts/test
lint:
	./scripts/test --co -q >/dev/null && .venv/bin/python -m ruff check runcomfy_async tests && .venv/bin/python -m mypy && .venv/bin/python -m mypy --strict --explicit-package-bases tests benchmarks
bench:
	.venv/bin/python -m benchmarks
docs:
	.venv/bin/python -m mkdocs build --strict
