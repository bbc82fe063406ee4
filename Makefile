# The whole setup on a fresh machine: `make demo` or `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
DEMO_EPOCHS ?= 2
# eager: inductor's first compile (~60-70 s from an empty cache) costs more than it saves in a 2-epoch run
DEMO_COMPILE ?= false
DEMO_RUN := demo-$(shell date +%Y%m%d-%H%M%S)
# Another apt or dpkg at work (unattended-upgrades, a second make) holds dpkg's lock: wait up to 5 minutes for it
# rather than fail ("Could not get lock /var/lib/dpkg/lock-frontend").
APT_GET := apt-get -o DPkg::Lock::Timeout=300
# $(call APT_INSTALL,PACKAGE): install; if that fails, update the package lists and install again. The lists' own lock
# (apt-get update) takes no timeout (apt 2.6 waits only for dpkg's), so update is tried again every 5 s, for up to
# 5 minutes, while another process holds it.
APT_INSTALL = { $(APT_GET) install -y -qq $(1) || { for try in $$(seq 60); do \
	  err=$$($(APT_GET) update -qq 2>&1) && break; case "$$err" in *"Could not get lock"*) sleep 5;; \
	  *) echo "$$err" >&2; break;; esac; done; $(APT_GET) install -y -qq $(1); }; }

.PHONY: setup demo test clean fashion-mnist chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST: Debian's package when apt is usable, else a checksummed download into data/fashion-mnist.
fashion-mnist: setup
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && $(call APT_INSTALL,dataset-fashion-mnist); then :; \
	else $(VENV)/bin/deepres data get fashion-mnist --dest data/fashion-mnist; fi

# Chromium for the browser test of `deepres serve`: Debian's package, which Playwright drives (it downloads no browser).
chromium:
	@if [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then $(call APT_INSTALL,chromium); \
	else echo "no Chromium: install it (Debian: apt-get install chromium) for tests/test_serve_browser.py" >&2; fi

# A few minutes on any 2-core CPU: ResNet-20, $(DEMO_EPOCHS) epochs, >= 90% (the full recipe, 15 epochs, reaches >= 93%).
demo: fashion-mnist
	@root=$(FMNIST); [ -f $$root/train-images-idx3-ubyte.gz ] || root=data/fashion-mnist; \
	$(VENV)/bin/deepres train fashion_mnist/resnet20 --set train.epochs=$(DEMO_EPOCHS) --set train.compile=$(DEMO_COMPILE) \
	  --set data.root=$$root --set run.name=$(DEMO_RUN) && \
	$(VENV)/bin/deepres eval runs/$(DEMO_RUN) --set data.root=$$root

test: setup fashion-mnist chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info
