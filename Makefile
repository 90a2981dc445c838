# The two set-up commands of the README: `make app` and `make test`. Each installs what it needs.
.PHONY: app test lint bench bench-quick clean-venv

app:
	@scripts/bootstrap.sh runtime
	.venv/bin/streamlit run app.py

test:
	@scripts/bootstrap.sh dev
	@scripts/install_browser.sh || echo "[test] headless Chromium unavailable: the browser test will skip"
	.venv/bin/python -m pytest -q

lint:
	@scripts/bootstrap.sh dev
	.venv/bin/ruff check alphalora pages app.py ui tests bench
	.venv/bin/ruff format --check alphalora pages app.py ui tests bench

bench-quick:
	@scripts/bootstrap.sh bench
	.venv/bin/python bench/run_all.py --quick

bench:
	@scripts/bootstrap.sh bench
	.venv/bin/python bench/run_all.py

clean-venv:
	rm -rf .venv
