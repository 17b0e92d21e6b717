// SPDX-License-Identifier: MIT
/*
 * libFuzzer target for the fd-passing protocol's JSON line parser
 * (tools/common/fdproto-json.c), which reads what a manager sends on the
 * socket: the input, up to its first NUL, is one line without its newline.
 * Beyond the sanitizers, it checks the parser's contract: a result of 0 with
 * a command, an id inside the line and an opaque that fits, or -EINVAL or
 * -EMSGSIZE with a message.
 */
#include "fdproto-json.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const char *line, const struct snap_fdproto_req *req, const char *err, int r)
{
	size_t len = strlen(line);

	if (r == 0) {
		if (req->cmd != SNAP_FDPROTO_ADD_FD && req->cmd != SNAP_FDPROTO_START)
			abort();
		if (req->id && (req->id < line || req->id + req->id_len > line + len))
			abort();
		if (strnlen(req->opaque, sizeof(req->opaque)) > len)
			abort();
		if (req->set_id < -1 || (!req->has_opaque && req->opaque[0]))
			abort();
		return;
	}
	if ((r != -EINVAL && r != -EMSGSIZE) || !err[0])
		abort();
	if (r == -EMSGSIZE && len < SNAP_FDSET_LINE_MAX)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct snap_fdproto_req req;
	char err[512] = "";
	char *line;
	int r;

	line = malloc(size + 1);
	if (!line)
		return 0;
	memcpy(line, data, size);
	line[size] = '\0';
	r = snap_fdproto_parse_json(line, &req, err, sizeof(err));
	check(line, &req, err, r);
	free(line);
	return 0;
}
