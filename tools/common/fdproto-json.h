/* SPDX-License-Identifier: MIT */
/* One line of the fd-passing protocol in its QMP JSON form; a tools' module (see fdset.h). */
#ifndef SNAP_TOOLS_FDPROTO_JSON_H
#define SNAP_TOOLS_FDPROTO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest protocol line, newline included. */
#define SNAP_FDSET_LINE_MAX 4096

enum snap_fdproto_cmd { SNAP_FDPROTO_ADD_FD, SNAP_FDPROTO_START };

/* A parsed line. */
struct snap_fdproto_req {
	enum snap_fdproto_cmd cmd;
	int64_t set_id; /* -1: the lowest free id */
	bool has_opaque;
	char opaque[SNAP_FDSET_LINE_MAX];
	const char *id; /* the JSON "id" to echo, raw, inside the parsed line; NULL if none */
	size_t id_len;
};

/*
 * Parses line (NUL-terminated, without its newline) as one QMP command object:
 * {"execute": "add-fd" | "start", "arguments": {"fdset-id": N, "opaque": S},
 * "id": ...}, members in any order, each key at most once. Fills *req (req->id
 * points into line). 0; -EINVAL for anything else, with a message naming the
 * column or the key; -EMSGSIZE if line has SNAP_FDSET_LINE_MAX bytes or more.
 */
int snap_fdproto_parse_json(const char *line, struct snap_fdproto_req *req, char *errbuf,
			    size_t errlen);

#endif
