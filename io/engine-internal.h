/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the engine implementations; not part of the engine API.
 */
#ifndef SNAP_IO_ENGINE_INTERNAL_H
#define SNAP_IO_ENGINE_INTERNAL_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/*
 * Largest transfer handed to the kernel in one request (MAX_RW_COUNT with
 * 4 KiB pages); the core completes longer requests as short transfers.
 */
#define SNAP_IO_MAX_LEN 0x7ffff000u

/*
 * Test hook: SNAPMR_FAIL_ENGINE_INIT holds a comma-separated list of engine
 * names (e.g. "uring,aio") whose init then fails with -ENOSYS, as on a kernel
 * without the feature, so tests can check that callers fall back to another
 * engine. Read with secure_getenv(), so setuid programs ignore it.
 */
static inline bool snap_io_init_fail_injected(const char *name)
{
	const char *list = secure_getenv("SNAPMR_FAIL_ENGINE_INIT");
	size_t len = strlen(name);

	while (list && *list) {
		const char *end = strchrnul(list, ',');

		if ((size_t)(end - list) == len && !strncmp(list, name, len))
			return true;
		list = *end ? end + 1 : end;
	}
	return false;
}

#endif
