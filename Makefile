# wxpay_signplan: PGXS build
EXTENSION = wxpay_signplan
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = $(EXTENSION)
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
# Not HEADERS: PGXS would install these into the server's include
# directory, and they are internal.
WX_HEADERS = $(wildcard src/*.h)

# Install scripts live in sql/ beside the regression inputs; the two are told
# apart by name.
DATA = $(wildcard sql/$(EXTENSION)--*.sql)
REGRESS = $(sort $(patsubst sql/%.sql,%,$(filter-out sql/$(EXTENSION)--%,$(wildcard sql/*.sql))))
REGRESS_OPTS = --inputdir=.
TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

PG_CPPFLAGS += $(shell pkg-config --cflags libcurl openssl) -DWXPAY_VERSION='"$(EXTVERSION)"'
# The server's headers are not -Wextra clean; treat them as system headers so
# that -Wextra judges our code only.
PG_CPPFLAGS += -isystem $(includedir_server)
PG_CFLAGS += -Wall -Wextra
SHLIB_LINK += $(shell pkg-config --libs libcurl openssl)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies; every object depends on the shared
# header, or a changed struct leaves objects with two layouts.
$(OBJS): $(WX_HEADERS)
