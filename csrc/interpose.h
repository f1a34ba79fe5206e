/* interpose.c: the pthread_create wrapper (an entry point; calls
 * lifecycle.c and the modules below it). */
#ifndef THREADGUARD_INTERPOSE_H
#define THREADGUARD_INTERPOSE_H

#include "common.h"

/* This copy's own pthread_create wrapper (GOT slots are pointed at it). */
TG_HIDDEN int tg_own_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

#endif
