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

#endif
