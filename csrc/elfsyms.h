/* elfsyms.c: a loaded library's symbols read from its file's full symbol
 * table, local ones included (a helper: calls nothing). */
#ifndef THREADGUARD_ELFSYMS_H
#define THREADGUARD_ELFSYMS_H

#include "common.h"

struct tg_elf_symbol {
    const char *name;    /* in: the symbol's name */
    unsigned long value; /* out: its address in the file (0: not found) */
    unsigned long size;  /* out: its size in bytes */
};

/* Look up each of symbols[0..count) in the .symtab of the ELF file at
 * path.  Returns how many were found; -1 when the file cannot be read or
 * has no .symtab (stripped).  Maps the file read-only for the look-up and
 * unmaps it; allocates nothing. */
TG_HIDDEN int tg_elf_lookup(const char *path, struct tg_elf_symbol *symbols, int count);

#endif
