/* klua_lines.h: the REPL's line input (klua_lines.c), as klua_signals.c
 * sees it: Ctrl-C at the prompt interrupts the line being typed. */
#ifndef KLUA_LINES_H
#define KLUA_LINES_H

#include "klua_ffi.h" /* klua_lines_t, and what klua_lines_take found (KLUA_LINES_*) */

/* Any thread. Discards the line being typed: the pending request ends with
 * KLUA_LINES_INTERRUPTED. With no request pending, the next one does (a
 * Ctrl-C typed while no prompt was shown still gives a fresh prompt). */
void klua_lines_interrupt(klua_lines_t *l);

#endif
