# bash completion for wlcgcloud; load with: source <(wlcgcloud completion show bash)
_wlcgcloud_complete() {
    local IFS=$'\n'
    local words
    printf -v words '%s\n' "${COMP_WORDS[@]}"
    COMPREPLY=( $(COMP_WORDS="$words" COMP_CWORD="$COMP_CWORD" _WLCGCLOUD_COMPLETE=bash \
                  "${COMP_WORDS[0]}" 2>/dev/null) )
}
complete -o default -F _wlcgcloud_complete wlcgcloud
