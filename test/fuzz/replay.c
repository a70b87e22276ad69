/*-------------------------------------------------------------------------
 *
 * replay.c
 *	  A main() for the fuzz targets without libFuzzer: runs the target once
 *	  over every file named on the command line or found in a directory
 *	  named there.
 *
 * The fast suite builds each target with this driver and gcc's sanitizers
 * and replays the seed corpus and the inputs of past crashes
 * (test/fuzz/regressions/), so a crash fuzzing once found stays a failing
 * test without needing clang.  Each input is copied into a buffer of its
 * exact size, as libFuzzer does, so reads past the end are caught.
 *
 *-------------------------------------------------------------------------
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

extern int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int	ninputs;

static void
ReplayFile(const char *path)
{
	FILE	   *f = fopen(path, "rb");
	long		size;
	uint8_t    *buf;

	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
		fseek(f, 0, SEEK_SET) != 0)
	{
		fprintf(stderr, "replay: cannot read \"%s\"\n", path);
		exit(2);
	}
	/* malloc(0) may return NULL; keep a distinct, exactly sized block */
	buf = malloc(size > 0 ? (size_t) size : 1);
	if (buf == NULL || (size > 0 && fread(buf, 1, (size_t) size, f) != (size_t) size))
	{
		fprintf(stderr, "replay: cannot read \"%s\"\n", path);
		exit(2);
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t) size);
	free(buf);
	ninputs++;
}

static void
ReplayPath(const char *path)
{
	struct stat st;
	DIR		   *d;
	struct dirent *de;

	if (stat(path, &st) != 0)
		return;					/* an absent directory holds no inputs */
	if (!S_ISDIR(st.st_mode))
	{
		ReplayFile(path);
		return;
	}
	d = opendir(path);
	if (d == NULL)
	{
		fprintf(stderr, "replay: cannot open \"%s\"\n", path);
		exit(2);
	}
	while ((de = readdir(d)) != NULL)
	{
		char		sub[4096];

		if (de->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
		ReplayPath(sub);
	}
	closedir(d);
}

int
main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		ReplayPath(argv[i]);
	printf("%s: %d inputs replayed\n", argv[0], ninputs);
	return 0;
}
