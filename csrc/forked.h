/* forked.c: the pools a forked child inherits, resized to its share
 * before its first parallel call (policy; calls shaping.c, share.c,
 * registry.c, config.c). */
#ifndef THREADGUARD_FORKED_H
#define THREADGUARD_FORKED_H

#include "common.h"

/* In the parent, before fork: find the controls of each pool sized so far
 * (once per pool). */
TG_HIDDEN void tg_forked_prepare(void);
/* In the child, after it registered with its parent: resize what it
 * inherited now, and once more when its siblings have started (Python). */
TG_HIDDEN void tg_forked_child(void);

#endif
