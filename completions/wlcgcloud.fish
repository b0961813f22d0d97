# fish completion for wlcgcloud; load with: wlcgcloud completion show fish | source
# or install it: wlcgcloud completion install fish
function __wlcgcloud_complete
    set -l words (commandline -opc)
    set -l current (commandline -ct | string unescape)
    set -lx COMP_WORDS (string join \n -- $words $current | string collect)
    set -lx COMP_CWORD (count $words)
    set -lx _WLCGCLOUD_COMPLETE fish
    set -l found ($words[1] 2>/dev/null)
    if test (count $found) -gt 0
        printf '%s\n' $found
    else
        __fish_complete_path $current
    end
end
complete -c wlcgcloud -f -a '(__wlcgcloud_complete)'
