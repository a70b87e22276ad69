# wxpay_signplan: PGXS build
#
# Builds in the source directory or, as Debian's pg_buildext does (one
# build-<major> directory per PostgreSQL major), in another directory with
# "make -f <src>/Makefile VPATH=<src>": every list below is made relative to
# the source directory.  Targets of our own: "make dist" (the PGXN archive),
# and "make installcheck" starting the WeChat Pay simulator when the
# environment does not name one (test/installcheck.sh).
EXTENSION = wxpay_signplan
# the directory of this Makefile ("" in the source directory itself)
WX_SRC := $(patsubst ./,,$(dir $(firstword $(MAKEFILE_LIST))))
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(WX_SRC)$(EXTENSION).control)

MODULE_big = $(EXTENSION)
# src/ holds one folder per layer (src/wxpay_signplan.h has the map).
WX_SRCDIRS = $(patsubst $(WX_SRC)%/,%,$(sort $(dir $(wildcard $(WX_SRC)src/*.c $(WX_SRC)src/*/*.c))))
OBJS = $(patsubst $(WX_SRC)%.c,%.o,$(wildcard $(WX_SRC)src/*.c $(WX_SRC)src/*/*.c))
# Not HEADERS: PGXS would install these into the server's include
# directory, and they are internal.
WX_HEADERS = $(wildcard $(WX_SRC)src/*.h $(WX_SRC)src/*/*.h)

# Install scripts live in sql/ beside the regression inputs; the two are told
# apart by name.
DATA = $(patsubst $(WX_SRC)%,%,$(wildcard $(WX_SRC)sql/$(EXTENSION)--*.sql))
REGRESS = $(sort $(patsubst $(WX_SRC)sql/%.sql,%,$(filter-out $(WX_SRC)sql/$(EXTENSION)--%,$(wildcard $(WX_SRC)sql/*.sql))))
REGRESS_OPTS = --inputdir=$(or $(WX_SRC),.)
TAP_TESTS = 1
PROVE_TESTS = $(sort $(patsubst $(WX_SRC)%,%,$(wildcard $(WX_SRC)test/t/*.pl)))

PG_CPPFLAGS += -I$(or $(WX_SRC),.)/src $(shell pkg-config --cflags libcurl openssl) -DWXPAY_VERSION='"$(EXTVERSION)"'
# The server's headers are not -Wextra clean; treat them as system headers so
# that -Wextra judges our code only.
PG_CPPFLAGS += -isystem $(includedir_server)
PG_CFLAGS += -Wall -Wextra
SHLIB_LINK += $(shell pkg-config --libs libcurl openssl)

# The regression files and TAP tests talk to the WeChat Pay simulator
# (test/sim/) named by WXPAY_PKI, WXPAY_SIM_URL and WXPAY_SIM_CONTROL, as
# test/run.sh sets them.  Without them, "make installcheck" is
# test/installcheck.sh, which checks what the run needs (saying exactly what
# is missing), starts the simulator and runs "make installcheck" again
# with them set.
ifeq ($(WXPAY_SIM_URL),)
NO_INSTALLCHECK = 1
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Each TAP file's time and CPU, as prove measures them.  WX_PROVE_JOBS TAP
# files at once (test/lib.sh sets it): each has its own clusters, ports
# and simulator (test/t/WxpayTest.pm).
PROVE_FLAGS += --timer $(if $(WX_PROVE_JOBS),-j$(WX_PROVE_JOBS))

# PGXS tracks no header dependencies; every object depends on the shared
# header, or a changed struct leaves objects with two layouts.
$(OBJS): $(WX_HEADERS)
# In another build directory, the objects' directory must exist (not a
# target: VPATH would find the source directory's src/).
ifneq ($(WX_SRC),)
$(shell $(MKDIR_P) $(WX_SRCDIRS))
endif

ifeq ($(WXPAY_SIM_URL),)
installcheck:
	@WX_BINDIR='$(bindir)' WX_VERSION='$(EXTVERSION)' WX_TAP='$(TAP_TESTS)' \
		bash $(srcdir)/test/installcheck.sh $(MAKE) \
		$(if $(WX_SRC),-f $(abspath $(firstword $(MAKEFILE_LIST))) VPATH=$(srcdir)) \
		PG_CONFIG=$(PG_CONFIG) installcheck
endif

# The PGXN archive: META.json's version is the control file's (test/static.sh
# checks), and the archive holds what "git archive HEAD" does.
.PHONY: dist
dist:
	@git -C $(srcdir) diff --quiet HEAD || \
		echo "make dist: uncommitted changes are not in the archive (git archive HEAD)" >&2
	git -C $(srcdir) archive --format zip --prefix=$(EXTENSION)-$(EXTVERSION)/ \
		-o $(CURDIR)/$(EXTENSION)-$(EXTVERSION).zip HEAD
	@echo "$(EXTENSION)-$(EXTVERSION).zip"
