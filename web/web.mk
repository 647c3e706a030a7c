# web.mk -- compile the playground (web/static/*) into the server library.
#
# $(B)/tools/embed (host tool, web/tools/embed.c) writes $(B)/gen/web_assets.c, which defines
# web_assets[] / web_assets_count (web/assets.h); its object joins libserver.a, where
# server/static.c serves it.  The generated file is rebuilt when any static file changes or
# one is added or removed (the directory's own time stamp is a prerequisite too).

WEB_STATIC := $(sort $(filter-out %~ %.swp,$(wildcard web/static/*)))

$(B)/tools/embed: web/tools/embed.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $<

$(B)/gen/web_assets.c: $(B)/tools/embed $(WEB_STATIC) web/static
	@mkdir -p $(@D)
	$(B)/tools/embed web/static $@ $(WEB_STATIC)

$(B)/gen/web_assets.o: $(B)/gen/web_assets.c
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/libserver.a: $(B)/gen/web_assets.o

# Also link the table straight into the lmserve binary (the top Makefile adds $(GEN_OBJ) to
# its objects): a linker does not pull an archive member to satisfy a weak reference, and
# server/static.c may refer to web_assets weakly so that it links without this module.
GEN_OBJ += $(B)/gen/web_assets.o
