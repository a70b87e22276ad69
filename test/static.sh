#!/usr/bin/env bash
# test/static.sh: the build must be warning-free and the analyzers clean.
#
# 1. A clean build of a copy of the tree with -Werror (on top of the
#    Makefile's -Wall -Wextra), so no stale object hides a warning.
# 2. clang's static analyzer over every file in src/, with the real server,
#    libcurl and OpenSSL headers; any finding fails.
# 3. cppcheck (warning, performance and portability checks) over src/ and
#    the fuzz targets; any finding fails.
# 4. The layers of src/ (the map in src/wxpay_signplan.h): from the built
#    objects' symbols, every call between files goes down the list of
#    folders or stays inside one, and no folder's files call each other in a
#    cycle.
# 5. The release metadata agree with the control file's default_version:
#    META.json (PGXN: version, provides' version and install script) and
#    debian/changelog's upstream version.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# Prints each disagreement of the release metadata with the control file;
# returns non-zero if there is one.
wx_check_metadata() {
    local control version
    control=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$WX_ROOT/wxpay_signplan.control")
    WX_CONTROL_VERSION=$control perl -MJSON::PP -e '
        my $v = $ENV{WX_CONTROL_VERSION};
        local $/; open my $f, "<", "$ARGV[0]/META.json" or die "META.json: $!\n";
        my $m = JSON::PP->new->decode(<$f>);
        my $p = $m->{provides}{wxpay_signplan} || {};
        my @bad;
        for my $k (qw(name abstract version maintainer license provides meta-spec)) {
            push @bad, "META.json has no \"$k\" (PGXN Meta Spec 1.0.0)" unless exists $m->{$k};
        }
        push @bad, "META.json version \"$m->{version}\" differs from the control file\x27s default_version \"$v\""
            if ($m->{version} // "") ne $v;
        push @bad, "META.json provides.wxpay_signplan.version \"" . ($p->{version} // "") . "\" differs from \"$v\""
            if ($p->{version} // "") ne $v;
        push @bad, "META.json provides.wxpay_signplan.file is not \"sql/wxpay_signplan--$v.sql\""
            if ($p->{file} // "") ne "sql/wxpay_signplan--$v.sql";
        push @bad, "META.json meta-spec version is not 1.0.0" if ($m->{"meta-spec"}{version} // "") ne "1.0.0";
        print "$_\n" for @bad;
        exit(@bad ? 1 : 0);' "$WX_ROOT" || return 1
    [ -f "$WX_ROOT/sql/wxpay_signplan--$control.sql" ] ||
        { echo "sql/wxpay_signplan--$control.sql (default_version's install script) is missing"; return 1; }
    version=$(sed -n '1s/^[^(]*(\([^-)]*\)-[^)]*).*/\1/p' "$WX_ROOT/debian/changelog")
    [ "$version" = "$control" ] ||
        { echo "debian/changelog's upstream version \"$version\" differs from the control file's default_version \"$control\""; return 1; }
}
# Prints each call between files that breaks the layering of src/ (the map in
# src/wxpay_signplan.h); returns non-zero if there is one.  $1 is a built tree.
wx_check_layers() {
    (cd "$1" && for o in src/*.o src/*/*.o; do
        nm -A --defined-only -g "$o" | awk '$2 ~ /^[TDBRC]$/ {print "D", $1, $3}'
        nm -A -u "$o" | awk '{print "U", $1, $NF}'
    done) | perl -e '
        # lower rank first; one rank for peers that must not call each other
        my %rank = (protocol => 0, runtime => 1, wire => 2, config => 3, call => 4,
                    sql => 5, queue => 5, "" => 6);
        my (%def, @use, %edge, $bad);
        while (<STDIN>) {
            my ($k, $file, $sym) = split;
            $file =~ s/\.o:.*//;
            if ($k eq "D") { $def{$sym} = $file } else { push @use, [$file, $sym] }
        }
        for (@use) {
            my ($from, $sym) = @$_;
            my $to = $def{$sym} // next;
            next if $to eq $from;
            $edge{$from}{$to} .= " $sym";
        }
        sub layer { my ($d) = $_[0] =~ m{^src/(?:([a-z_]+)/)?}; $d // "" }
        for my $from (sort keys %edge) {
            for my $to (sort keys %{$edge{$from}}) {
                my ($lf, $lt) = (layer($from), layer($to));
                die "$from: folder $lf is not in the map of test/static.sh\n" unless exists $rank{$lf};
                die "$to: folder $lt is not in the map of test/static.sh\n" unless exists $rank{$lt};
                next if $lf eq $lt || $rank{$lt} < $rank{$lf};
                print "$from.c calls up into $to.c:$edge{$from}{$to}\n";
                $bad = 1;
            }
        }
        # cycles inside a folder: depth-first search over same-folder edges
        my (%state, @path);
        my $visit; $visit = sub {
            my $n = shift;
            $state{$n} = 1; push @path, $n;
            for my $m (sort keys %{$edge{$n} // {}}) {
                next unless layer($m) eq layer($n);
                if (($state{$m} // 0) == 1) {
                    my @c = @path; shift @c while $c[0] ne $m;
                    print "call cycle: ", join(" -> ", map { "$_.c" } @c, $m), "\n";
                    $bad = 1;
                } elsif (!$state{$m}) { $visit->($m) }
            }
            pop @path; $state{$n} = 2;
        };
        $state{$_} or $visit->($_) for sort keys %edge;
        exit($bad ? 1 : 0);'
}
wx_install_deps
wx_install_harden_deps
wx_make_work
status=0

wx_log "release metadata (META.json, debian/changelog)"
wx_check_metadata || status=1

wx_log "-Werror build"
wx_copy_tree "$WX_WORK/werror"
if ! make -C "$WX_WORK/werror" -s PG_CONFIG="$WX_PG_CONFIG" COPT=-Werror >"$WX_WORK/werror.log" 2>&1; then
    cat "$WX_WORK/werror.log"
    status=1
fi

wx_log "layers of src/ (calls only go down; no cycle inside a folder)"
wx_check_layers "$WX_WORK/werror" || status=1

wx_log "clang static analyzer"
inc=$("$WX_PG_CONFIG" --includedir-server)
for f in "$WX_ROOT"/src/*.c "$WX_ROOT"/src/*/*.c; do
    if ! clang --analyze -Xanalyzer -analyzer-output=text -Xanalyzer -analyzer-werror \
            -I"$WX_ROOT/src" $(pkg-config --cflags libcurl openssl) -isystem "$inc" \
            -D_GNU_SOURCE -DWXPAY_VERSION='"analyzer"' -o /dev/null "$f"; then
        status=1
    fi
done

wx_log "cppcheck"
if ! cppcheck --enable=warning,performance,portability --error-exitcode=1 --quiet \
        --inline-suppr --std=c99 -I"$WX_ROOT/src" -I"$WX_ROOT/src/protocol" "$WX_ROOT"/src/*.c "$WX_ROOT"/src/*/*.c "$WX_ROOT"/test/fuzz/*.c; then
    status=1
fi

exit $status
