/* json_gbnf.h -- a JSON grammar for the sampler's tests (an object at the top,
 * whitespace before it and between tokens, none after it). */
#ifndef LMSERVE_TESTS_JSON_GBNF_H
#define LMSERVE_TESTS_JSON_GBNF_H

#define JSON_GBNF                                                                           \
    "root   ::= ws object\n"                                                                \
    "value  ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"       \
    "object ::= \"{\" ws ( member ( \",\" ws member )* )? \"}\"\n"                          \
    "member ::= string ws \":\" ws value ws\n"                                              \
    "array  ::= \"[\" ws ( value ws ( \",\" ws value ws )* )? \"]\"\n"                      \
    "string ::= \"\\\"\" char* \"\\\"\"\n"                                                  \
    "char   ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" hex4 )\n"          \
    "hex4   ::= [0-9a-cA-Ce-fE-F] hex hex hex | [dD] [0-7] hex hex\n"                       \
    "hex    ::= [0-9a-fA-F]\n"                                                              \
    "number ::= \"-\"? ( \"0\" | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]+ )?\n" \
    "ws     ::= [ \\t\\n]*\n"

#endif
